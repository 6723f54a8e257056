"""Where everything is kept: the home, the warehouse (local or object store), table schemas and
names, the run profile.
"""
