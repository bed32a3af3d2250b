"""The developer's and the production line's tools: flash, provision, image, status, bundle, demo."""
