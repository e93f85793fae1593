"""What every service runs on: settings, the wire layer, errors, views, names, server bootstrap."""
