"""Tutorial sync: follow a Git branch and publish it atomically to the shared tutorial store."""
