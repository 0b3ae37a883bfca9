"""Entry points: the `lift3d` command line, `generate` and the RunPod worker. Nothing imports this package."""
