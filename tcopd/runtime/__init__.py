"""tcopd.runtime"""
