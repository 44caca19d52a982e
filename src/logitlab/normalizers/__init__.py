"""normalizers"""
