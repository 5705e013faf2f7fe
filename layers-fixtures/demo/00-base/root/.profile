# root profile
