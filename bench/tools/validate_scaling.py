"""How long and how much memory the validator takes on a program of about 450,000 tasks: smollm2-135m (shape only)
with an LM-head task a row split 8 ways (`reduce` stage or last_task, given as the one argument).
    /usr/bin/time -v python bench/tools/validate_scaling.py stage      (peak RSS from /usr/bin/time)"""

import sys
import time

import amk

model = amk.load_model("smollm2-135m", weights=False)
config = {"matvec": {"lm_head": {"rows_per_task": 1, "k_splits": 8, "reduce": sys.argv[1]}}}
t0 = time.time()
program = amk.lower(model, "h200", config)
t1 = time.time()
result = amk.validate(program)
t2 = time.time()
print(f"{len(program.tasks)} tasks, {len(program.joins)} joins: lower {t1 - t0:.1f} s, validate {t2 - t1:.1f} s, "
      f"ok {result.ok}", [i.message[:150] for i in result.issues[:3]])
