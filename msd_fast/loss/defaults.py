"""Default hyper-parameters of the MSD loss and its beta schedule, each chosen on the Fashion-MNIST *validation*
split (the test split is never read for a choice).

First, one at a time around alpha 0.5 / tau 3 / hint 0.05 on the sum over D (`experiments/reproduce.py`,
experiments/results/sweep.json; ResNet-18 width 0.125, 3 epochs, seed 0): alpha 0.3 beat 0.5 and 0.7;
tau = 3 (the paper's value) beat 1 and 5.

The feature hint is a mean over the feature dimension D (FEATURE_REDUCTION = "mean"), so its scale does
not grow with the network's width (with the sum, a weight tuned at D = 64 weighted the hint 8x more at full
width, D = 512, and MSD lost to joint training there).

Then on the suites' two settings (ResNet-18 width 0.125 on 5,500 training images for 10 epochs, width 0.25
on 10,000 for 4 epochs; 3 seeds each; mean validation top-1 over exits, seeds and settings), by
`python -m experiments.select_defaults`:
- the hint weight, beta_begin in {0, 0.8, 3.2} at alpha 0.3: 0 won (85.66 / 85.51 / 83.67), so the schedule
  is 0 -> 0 and the hint is off unless asked for (`beta=`, `--beta-begin`); at 3.2 (the former default,
  = 0.05 on the sum at D = 64) it cost 1.3-3.3 points per exit against joint training;
- then alpha in {0.1, 0.2, 0.3} with the hint off: 0.2 won (85.25 / 85.96 / 85.66; joint training, not a
  candidate, 85.87). The differences are a few tenths of a point, about the size of the seed noise.
experiments/results/{alpha,beta}_selection.json hold the scores (the beta table is re-scored at alpha 0.2).
"""
ALPHA = 0.2
TEMPERATURE = 3.0
BETA_BEGIN = 0.0
BETA_END = 0.0
FEATURE_REDUCTION = "mean"  # "mean" over D (default) or "sum" over D (the paper's equation as written)
