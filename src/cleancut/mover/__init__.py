"""mover"""
