"""Delivery adapters: how a notification leaves tollgate (SMTP, signed webhooks).

They sit between the application (the relay, ``service/application/relay.py``, which claims due
notifications and records each attempt) and storage: an adapter gets one ``Delivery`` and answers a
``SendResult``; it never touches the database.
"""
