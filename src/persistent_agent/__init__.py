"""persistent-agent: the Naylence persistence example in Python, on SQLCipher.

The file tree is the architecture: eight wings, each importing only the ones
above it in this list (``make lint`` checks it; ``access`` and ``storage``
are side by side and import neither the other), then the agent's entry point.

- ``errors``: every user-facing error, one line each, and how it is printed;
  ``addresses``: which hosts are loopback (what may travel in plaintext);
  ``settings``: every environment variable, its type, default and doc, read
  through one typed accessor (just above ``errors``, standard library only).
- ``keys/``: the master key and what it guards.
  ``keys.secret_files``: writing files that hold secrets, atomically;
  ``keys.master_key``: parsing, generating, reading the key file;
  ``keys.keyring``: data keys wrapped by the master key (envelope encryption);
  ``keys.transit``: the master key in Vault or OpenBao transit instead;
  ``keys.custody``: where a node's key comes from (one function for all).
- ``access/``: who may join the fabric, and over what.
  ``access.pki``: the project CA and the servers' certificates;
  ``access.credentials``: one credential per process, its secret and revocation;
  ``access.issuer``: the token issuer process (OAuth2 client credentials);
  ``access.authorizer``: the sentinel's authorizer, by the token's role;
  ``access.factories``: the runtime hooks (authorizer, secret-file provider);
  ``access.fabric``: each node's TLS and admission settings, the CA pinned;
  ``access.project``: the project's credentials and certificates (make access);
  ``access.handshakes``: each refused TLS handshake one log line.
- ``storage/``: encrypted files and the runtime's storage hooks.
  ``storage.layout``: file names and data directories;
  ``storage.lock``: one writer per data directory;
  ``storage.database``: opening one SQLCipher file with a key;
  ``storage.data_keys``: which data key opens which file of a node;
  ``storage.provider``: the ``StorageProvider`` and ``KeyValueStore``;
  ``storage.provider_factory``: its config, factory and the
  ``encrypted-sqlite`` and ``encrypted-postgres`` profiles;
  ``storage.backend``: what a backend of the agent's state is (versioned rows,
  compare-and-set, request records), with no database driver;
  ``storage.sealing``: AES-GCM rows and HMAC'd names, with no database driver;
  ``storage.sqlcipher_backend``: the node's SQLCipher files as such a backend;
  ``storage.shared_state``: the state replicas share in PostgreSQL, encrypted;
  ``storage.shared_provider``: a replica's own files plus the shared state;
  ``storage.events``: the storage-events hook (observations, change records);
  ``storage.registry``: the backends by profile name, loaded when chosen; it
  lists every backend's module, so a backend added there is listed by it, not
  here (docs/architecture.md's backends table is generated from it).
- ``metrics/``: what an operator can see of storage, keys and access.
  ``metrics.series``: every series declared once (the docs table);
  ``metrics.instruments``: its counters and histograms, in one registry;
  ``metrics.listener``: one listener on the storage-events hook;
  ``metrics.gauges``: read on scrape: sizes, keyring, custody, certificates,
  backup age;
  ``metrics.rpcs``: the agent's calls by operation and outcome;
  ``metrics.refusals``: the sentinel's refusals by reason;
  ``metrics.summary``: what ``make metrics`` prints;
  ``metrics.endpoint``: ``/metrics`` on loopback, started by each node.
- ``node/``: what runs inside the node processes.
  ``node.serving``: settings, preflight, serving (both node entry points);
  ``node.agent``: ``PersistentAgent`` and its state model;
  ``node.state``: transactional, versioned agent state;
  ``node.replies``: RPC replies without the SDK's 10 ms pause;
  ``node.logs``: disabled log levels dropped before formatting, no payload
  in any log;
  ``node.sentinel``: the sentinel entry point;
  ``node.listener``: its listeners, frames bounded to the envelope limit, and
  its end of each attach, which grants credits but never waits for them;
  ``node.link``: the link to the sentinel (its readiness, attached or not);
  ``node.backlog``: the agent's line of calls; those that waited too long refused.
- ``client/``: calling the agent through the sentinel (``persistent-agent-client``).
  ``client.cli``: its command line and subcommands (``run``, ``increment``);
  ``client.__main__``: ``python -m persistent_agent.client``;
  ``client.caller``: the seed's calls, retrieve then store, and its two lines;
  ``client.increments``: increment calls acknowledged exactly once;
  ``client.retry``: the one retry policy (deadlines, backoff with jitter, what
  is worth another try);
  ``client.failures``: where an error came from (local configuration,
  transport, sentinel, agent) and its one line.
- ``demo/``: what the demo and the tests run; no deployment imports it
  (its packages are the ``demo`` extra).
  ``demo.local_nodes``: the issuer and the nodes as local processes;
  ``demo.postgres_server``: a PostgreSQL server of the project's own;
  ``demo.replicas``: agent replicas as local processes (demo-replicas).
- ``ops/``: what the operator runs.
  ``ops.admin``: the ``persistent-agent-admin`` CLI;
  ``ops.config_files``: ``config/.env.*``, the key file and ``make init``;
  ``ops.node_keys``: each node's keys as its config says;
  ``ops.inspection``: verify and inspect; ``ops.backup``: backup and restore;
  ``ops.access_backup``: config/access sealed into backups;
  ``ops.rotation``: rotate-key;
  ``ops.access``: rotate-credentials, reissue-certs;
  ``ops.shared_tools``: the tools' side of the shared state.
- ``__main__``: the agent entry point.

Nothing in this ``__init__`` imports a third-party package: ``make init``
runs on a bare Python, before anything is installed.
"""

__version__ = "0.2.0"

AGENT_ADDR = "storage@fame.fabric"
