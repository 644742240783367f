"""Default hyper-parameters of the MSD loss and its beta schedule.

alpha and tau were chosen on the Fashion-MNIST *validation* split by the sweep in
`experiments/reproduce.py` (results in experiments/results/sweep.json): one-at-a-time around alpha 0.5 /
tau 3 / hint weight 0.05 -> 0, MSD, CPU preset (multi-exit ResNet-18 at width 0.125), 3 epochs, best mean
validation accuracy over exits. alpha = 0.3 won (90.09 vs 89.22 for 0.5 and 86.93 for 0.7); tau = 3 (the
paper's value; 1 and 5 were no better) and the hint schedule 0.05 -> 0 (0 and 0.2 were no better) stayed.

The feature hint is a mean over the feature dimension D (FEATURE_REDUCTION = "mean"), so its scale does
not grow with the network's width (with the sum, a weight tuned at D = 64 weighted the hint 8x more at full
width, D = 512, and MSD lost to joint training there).

The hint weight was then chosen on the *validation* split by `python -m experiments.select_beta`: beta_begin
in {0, 0.8, 3.2} (3.2 on the mean = the former 0.05 on the sum at D = 64), the MSD recipe above otherwise,
3 seeds each, ResNet-18 at width 0.125 on 5,500 training images (10 epochs) and at width 0.25 on 10,000
(4 epochs); mean validation top-1 over exits, seeds and both settings: 0 -> 85.66, 0.8 -> 85.51,
3.2 -> 83.67 (experiments/results/beta_selection.json). So the default schedule is 0 -> 0: the hint is off
unless asked for (`beta=`, `--beta-begin`); at 3.2 it cost 1.3-3.3 points per exit against joint training
in those settings, and the paired test results in the README say where MSD stands without it.
"""
ALPHA = 0.3
TEMPERATURE = 3.0
BETA_BEGIN = 0.0
BETA_END = 0.0
FEATURE_REDUCTION = "mean"  # "mean" over D (default) or "sum" over D (the paper's equation as written)
