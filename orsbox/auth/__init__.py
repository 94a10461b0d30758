"""Who is asking: API keys (from the environment or a keys file of salted hashes), quotas, and owners.

Every route but `/health` needs a valid `X-API-Key`. A request's `Principal` carries the key's id
(for logs), its quota, and the session owner it maps to: an HMAC of the key's identity under the
server's own secret, so the owner label on a container names no key and cannot be forged from one.
"""

from .keyfile import KeyFile, KeyRecord, new_key
from .keyring import OPEN_KEY_ID, KeyRing, Principal, Quota

__all__ = ["OPEN_KEY_ID", "KeyFile", "KeyRecord", "KeyRing", "Principal", "Quota", "new_key"]
