"""What the Snakefile (and ``ltpipe check-config`` / ``slurm-check``) runs on the login node, above
every library: the config checks (:mod:`.config`), the rules' targets and input functions
(:mod:`.targets`) and the Slurm fit check (:mod:`.slurm_fit`). No library module imports this
package (``tests/test_imports.py``); it imports the libraries to check their settings."""
