"""Plugin options: a plugin's own settings, declared as a pydantic model and given through the config."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class PluginOptions(BaseModel):
    """Base of a plugin's ``Options`` model. A plugin declares its settings as fields with defaults and
    bounds; the config validates what the user gives (``scheduler_options={...}``) against it, with errors
    naming the plugin and the field, and the plugin reads the validated instance as ``self.options``.
    Unknown fields are errors. Without fields of its own, a plugin takes no options."""

    model_config = ConfigDict(extra="forbid", frozen=True)
