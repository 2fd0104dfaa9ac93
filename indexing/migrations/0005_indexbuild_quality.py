from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("indexing", "0004_anomaly_models"),
    ]

    operations = [
        migrations.AddField(
            model_name="indexbuild",
            name="quality",
            field=models.JSONField(
                blank=True,
                help_text="Leave-one-out figures over the build's own vectors; empty for builds not measured.",
                null=True,
                verbose_name="retrieval quality",
            ),
        ),
    ]
