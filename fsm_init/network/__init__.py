"""The network steps: firewall (iptables), ssh (dropbear) and pppoe (pppd and its
helpers), and the supporting services that run dropbear and pppd beside the service.

Import rule: network imports the core and config; never steps, compat or client.
"""
