"""The demo page (`/demo`) and the routes it needs, mounted only when APP_ENV=development."""
