"""MONAI Label app for the Probabilistic U-Net: infer tasks and task configs."""
