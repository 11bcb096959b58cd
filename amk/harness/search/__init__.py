"""The search behind `amk loop`, in the TVM MetaSchedule / Ansor manner.

One job per module: policy (candidate rounds: mutations, crossover, random points, region restarts, and
which to measure), model (the ranking cost model fitted to this model's and GPU's tuning records), builder
(lowering, validation, pricing and NVRTC builds in worker processes, off the measuring process's path),
keep (the noise-aware keep rule and the incumbent), rounds (a run's rounds: generate, build, take in as built,
rank, pick), resume (what a run takes from the results file and corpus it continues, and the checkpoint's
weights they were measured on), start (a run's start before its first trial: the files it writes, the start
config measured or adopted), stopping (why a run stops), errors (the loop's own), distributed (one measuring worker
per GPU through Ray). harness/loop.py drives them.
"""
