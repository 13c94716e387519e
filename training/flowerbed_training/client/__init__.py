"""The ClientApp's process (one per message, at each site): the train/evaluate/survey handlers, their
mods (SecAgg+, client-side clipping, site state), local DP and the site's own data and state.
Imports `common` only, never `server`."""
