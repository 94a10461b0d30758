"""The container layout: paths, uids and label names, in one place for the server and the agent.

Stdlib only, Python 3.8+: the agent imports it inside environment images, and the
server (backends, policies, image builds) imports the same module, so the two
sides cannot disagree about where things are.
"""

# ---------------------------------------------------------------- paths inside a session's container

#: The agent's socket folder, and the socket's name in it.
SOCKET_DIR = "/run/orsbox"
SOCKET_NAME = "agent.sock"
#: The staged agent package (read-only): `orsbox/agent` under it.
AGENT_MOUNT = "/opt/orsbox"
#: Where environment images keep their code, and the wheels `orsbox build` vendored for it.
ENV_CODE_DIR = "/opt/env"
ENV_SITE_PACKAGES = ENV_CODE_DIR + "/site-packages"
#: The command user's working tree and home (both size-capped tmpfs).
WORKSPACE = "/workspace"
COMMAND_HOME = "/home/user"
COMMAND_USER = "user"

# ---------------------------------------------------------------- uids

#: Commands run as this uid (and gid) unless the policy names another.
COMMAND_UID = 1000
#: Hidden graders run as this uid: neither the commands' nor root.
GRADER_UID = 2000

# ---------------------------------------------------------------- labels (containers, networks, images)

LABEL_MANAGED = "orsbox.managed"  # "1" on everything orsbox starts
LABEL_SESSION = "orsbox.session"  # the client's X-Session-ID
LABEL_ENVIRONMENT = "orsbox.environment"  # also on environment images
LABEL_ENTRYPOINT = "orsbox.entrypoint"  # on images: module:Class of the Environment
LABEL_POLICY_NAME = "orsbox.policy"  # on images: policy file to use; on containers: policy digest
LABEL_NODE = "orsbox.node"  # the server's node id
LABEL_CREATED = "orsbox.created"  # unix time
LABEL_AGENT = "orsbox.agent"  # agent protocol version
LABEL_ROLE = "orsbox.role"  # "session", "describe" or "network"
LABEL_NETWORK_MODE = "orsbox.network"  # on session networks: the policy's network mode
LABEL_SANDBOX = "orsbox.sandbox"  # on openreward sandboxes: what was asked for (JSON, no env), for adoption
LABEL_OWNER = "orsbox.owner"  # on session containers: who created the session (never the key)
LABEL_INPUTS = "orsbox.inputs"  # on built images: the hash of their build inputs
