from .bot import AgentSpacesBot

__all__ = ["AgentSpacesBot"]
