"""
The twistd plugin: ``twistd -n hq -c config.toml`` runs the HQ server.
"""

from twisted.application.service import ServiceMaker

hq = ServiceMaker("HQ", "hq.tap", "A durable HTTP job queue server.", "hq")
