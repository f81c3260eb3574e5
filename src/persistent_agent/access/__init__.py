"""The access wing: who may join the fabric.

The project CA and the servers' certificates that clients pin (:mod:`.pki`),
one OAuth2 client credential per role and node (:mod:`.credentials`), the
token issuer process that trades those credentials for short-lived signed
tokens (:mod:`.issuer`), and the sentinel's authorizer that checks them
(:mod:`.authorizer`).
"""
