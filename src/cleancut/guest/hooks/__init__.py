"""guest/hooks"""
