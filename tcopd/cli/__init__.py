"""tcopd.cli"""
