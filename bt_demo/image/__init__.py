"""image: geometry, preprocessing, masks, parameter specs, intensity, domain checks (the slice as pixels)."""
