"""The ``toolagent`` command (``main``) and the script ``ray submit`` uploads (``submit_train``).

May import: everything; nothing imports it but ``rllib_app.__main__``.
"""
