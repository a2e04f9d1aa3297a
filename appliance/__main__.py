"""``python -m appliance``: the same as the ``appliance`` command."""

if __name__ == "__main__":
    from appliance.cli import main

    raise SystemExit(main())
