"""Operating a site: supervised services, the doctor\x27s checks and the site\x27s status."""
