"""The dispatch engine and what belongs to it (being moved here from
``fleetrpc/dispatcher.py``); ``options`` checks a call's options."""
