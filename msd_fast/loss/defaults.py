"""Default hyper-parameters of the MSD loss and its beta schedule.

alpha and tau were chosen on the Fashion-MNIST *validation* split by the sweep in
`experiments/reproduce.py` (results in experiments/results/sweep.json): one-at-a-time around alpha 0.5 /
tau 3 / hint weight 0.05 -> 0, MSD, CPU preset (multi-exit ResNet-18 at width 0.125), 3 epochs, best mean
validation accuracy over exits. alpha = 0.3 won (90.09 vs 89.22 for 0.5 and 86.93 for 0.7); tau = 3 (the
paper's value; 1 and 5 were no better) and the hint schedule 0.05 -> 0 (0 and 0.2 were no better) stayed.

The feature hint is a mean over the feature dimension D (FEATURE_REDUCTION = "mean"), so its scale does
not grow with the network's width: the sweep's 0.05 on the *sum* over D = 64 (the feature width of
ResNet-18 at width 0.125) is exactly BETA_BEGIN = 0.05 * 64 = 3.2 on the mean, the same loss at the swept
width. With the sum, the same 0.05 at full width (D = 512) weighted the hint 8x more and MSD lost to joint
training there. The hint weight anneals (cosine) from BETA_BEGIN to BETA_END, so it helps the shallow exits
early and fades out.
"""
ALPHA = 0.3
TEMPERATURE = 3.0
BETA_BEGIN = 3.2
BETA_END = 0.0
FEATURE_REDUCTION = "mean"  # "mean" over D (default) or "sum" over D (the paper's equation as written)
