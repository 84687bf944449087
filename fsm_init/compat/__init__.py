"""phusion/baseimage-docker's parts: /etc/service daemons (runit's layout), the
container environment (/etc/container_environment) and the syslog relay (/dev/log).

Import rule: compat imports the core, config and steps; never network or client.
"""
