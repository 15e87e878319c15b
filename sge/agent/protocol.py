"""The agents' protocol version, sent with every staging request and every answer.

Agents of different kit versions meet during a rolling upgrade. Blob GETs are the same
in every version (a GET by digest, verified by the receiver), so they interoperate.
Staging differs: protocol 1 (kits before 0.2, no header) answered unsigned; 2 signs
every answer, and a client of 2 believes no unsigned answer. The header lets a client
say which kind of host it met, so that the admin is told to upgrade that host rather
than to look for an impostor.
"""

PROTOCOL = "2"
HEADER = "X-Sge-Image-Protocol"
