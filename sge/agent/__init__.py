"""The node agent: one per exec host, sharing verified images between hosts.

main.py    the process (privilege split, supervision contract)
server.py  the HTTP side peers talk to (blobs by digest, signed staging requests)
auth.py    signing and checking staging requests
peers.py   the client: fetch from peers before the origin, via a seed host
hosts.py   this host's names, live hosts and trust, from Grid Engine
pe.py      the master prolog's staging of a parallel job's other hosts
deadline.py  deadlines for every exchange with another host, a pull's budget on peers
user.py    the server's own system user (install makes it, uninstall removes it)
"""
