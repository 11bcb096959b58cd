"""The agent harness: propose / evaluate / loop, the CLI's commands, the schema generator.

One job per module: verdict (the result type and config coercion), environment (device, versions, model
memo), evaluate, calibration (cost-model fitting from the corpus), baselines (GPU bandwidth and peers),
propose, loop, schema, and the CLI command groups (cmd_*)."""
