"""Doors onto other systems: the MCP server (:mod:`bananaline.connectors.mcp`)."""
