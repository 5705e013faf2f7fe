# tests the app layer drops
