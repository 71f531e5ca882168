from django.apps import AppConfig


class StreamingConfig(AppConfig):
    name = "streaming"
    verbose_name = "Text streams"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # `migrate` creates the reaper and purge schedules (when django-q is installed),
        # so no deployment step needs clicking in the admin.
        from django.db.models.signals import post_migrate

        from streaming import checks  # noqa: F401  (registers the settings check)
        from streaming.schedules import create_schedules

        post_migrate.connect(create_schedules, sender=self, dispatch_uid="streaming.schedules")
