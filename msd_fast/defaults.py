"""Default hyper-parameters of the MSD loss and its beta schedule.

alpha = 0.5 weighs label CE and all-pairs KD equally; temperature = 3.0 is the paper's tau (MSD_SPEC §3);
the feature-hint weight beta anneals (cosine) from BETA_BEGIN to BETA_END over training, so the hint helps
the shallow exits early and fades out (paper §3.2). Chosen on the Fashion-MNIST validation split by
`experiments/sweep_defaults.py` where that sweep's results are committed; see README.
"""
ALPHA = 0.5
TEMPERATURE = 3.0
BETA_BEGIN = 0.05
BETA_END = 0.0
