"""Operations: scheduled backups of each tenant."""
