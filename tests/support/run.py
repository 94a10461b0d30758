"""This test run's ids, and the repository it tests.

Every container and session network the run's orsbox starts carries `orsbox.node=NODE_ID`.
"""

from __future__ import annotations

import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUN_ID = uuid.uuid4().hex[:8]
NODE_ID = f"test-{RUN_ID}"
#: The API key every test server accepts (ORSBOX_API_KEYS) and every test client sends.
API_KEY = f"test-key-{uuid.uuid4().hex}"
AUTH = {"X-API-Key": API_KEY}
#: The operator key every test server accepts (ORSBOX_ADMIN_KEYS): the admin API and /metrics.
ADMIN_KEY = f"test-admin-{uuid.uuid4().hex}"
ADMIN = {"X-API-Key": ADMIN_KEY}
