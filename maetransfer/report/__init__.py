"""Transfer reports (tools/transfer_report.py): a suite of transfer jobs for several encoders, run as the tools' own
command lines, and one report comparing them with each other and with the published numbers.

Modules: `suite` (suite files, encoders, data roots, published results), `runner` (the jobs, their records, local and
Slurm runs), `results` (what a finished job wrote), `render` (report.md, report.html, report.json)."""
