"""The script ``ray submit`` uploads and runs on the head node: ``toolagent train`` with its flags.

    ray submit cluster.yaml rllib_app/cli/submit_train.py -- --config cluster-impala

Nothing imports this file; it runs as a script (``python submit_train.py FLAGS``), with
``toolagent`` installed on the head node (cluster.yaml's setup commands).
"""

import sys

from rllib_app.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
