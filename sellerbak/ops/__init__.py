"""Operations around the backup itself: metrics, failure notices, systemd units."""
