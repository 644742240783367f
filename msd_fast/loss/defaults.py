"""Default hyper-parameters of the MSD loss and its beta schedule.

Chosen on the Fashion-MNIST *validation* split by the sweep in `experiments/reproduce.py` (results in
experiments/results/sweep.json): one-at-a-time around alpha 0.5 / tau 3 / beta 0.05 -> 0, MSD, CPU preset,
3 epochs, best mean validation accuracy over exits. alpha = 0.3 won (90.09 vs 89.22 for 0.5 and 86.93 for
0.7); tau = 3 (the paper's value; 1 and 5 were no better) and the hint schedule 0.05 -> 0 (0 and 0.2 were
no better) stayed. The hint weight anneals (cosine) from BETA_BEGIN to BETA_END, so it helps the shallow
exits early and fades out (paper §3.2).
"""
ALPHA = 0.3
TEMPERATURE = 3.0
BETA_BEGIN = 0.05
BETA_END = 0.0
