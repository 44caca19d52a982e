"""maxent"""
