"""MACRO's tools served over the Model Context Protocol (``macro mcp serve``), for Claude Desktop or any MCP client.

It sits on top of the layers, beside the command line: it may import the tools, the skill library and the agent's
packages, and only the command line imports it. ``server`` says what is served (tools, results, artifacts as
resources, the folders scans may come from); ``transport`` how it is reached (stdio, or streamable HTTP).
Imports of the SDK are absolute (``import mcp``), so they never resolve to this package.
"""
