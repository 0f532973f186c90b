"""Traceability: custody trails, GS1 EPCIS 2.0 events, GS1 Digital Link, buyer keys and the widget's data."""
