"""The agent at run time: its socket server (`service`), and every process it starts (`processes`, `shell`).

`processes` runs commands and programs as unprivileged uids within the session's limits;
`procfs` finds and kills the processes of a uid; `fileops.py` and `oom_first.sh` are run
as the command user. Stdlib only, Python 3.8+.
"""
